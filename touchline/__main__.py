from touchline.cli import main
import sys
sys.exit(main())
