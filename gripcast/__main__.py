from gripcast.cli import main

raise SystemExit(main())
