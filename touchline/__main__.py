import sys

from touchline.entry import main

sys.exit(main())
