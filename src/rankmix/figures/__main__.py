import sys

from rankmix.figures import main

sys.exit(main())
