"""The embedded synthetic street-scene dataset ``make demo`` runs on (``synthetic``)."""

from stage1.demo.dataset import generate, plan
from stage1.demo.synthetic import render

__all__ = ["generate", "plan", "render"]
