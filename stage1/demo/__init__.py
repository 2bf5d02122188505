"""The embedded synthetic street-scene dataset ``make demo`` runs on (``synthetic``)."""

from stage1.demo.synthetic import generate, plan, render

__all__ = ["generate", "plan", "render"]
