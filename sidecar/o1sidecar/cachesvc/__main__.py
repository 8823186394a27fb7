import sys

from o1sidecar.cachesvc.server import main

sys.exit(main())
