from stage1.cli import main

raise SystemExit(main())
