from vgpumon.cli import main

raise SystemExit(main())
