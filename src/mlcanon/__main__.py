from mlcanon.cli import main

raise SystemExit(main())
