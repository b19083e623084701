import sys

from fabricunlearn.cli import main

sys.exit(main())
