import sys

from livereduce.cli import main

sys.exit(main())
