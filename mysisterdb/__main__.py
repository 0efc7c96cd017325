from mysisterdb.cli import main

raise SystemExit(main())
