from livereduce.worker.main import main
from livereduce.worker.stop import exit_now

exit_now(main())
