from iotwatch.cli import main

raise SystemExit(main())
