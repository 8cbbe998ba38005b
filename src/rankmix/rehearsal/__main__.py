import sys

from rankmix.rehearsal.run import main

sys.exit(main())
