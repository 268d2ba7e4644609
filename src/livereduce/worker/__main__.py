import sys

from livereduce.worker.main import main

sys.exit(main())
