from fibric.cli import main

raise SystemExit(main())
