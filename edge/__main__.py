import sys

from edge.launch import main

sys.exit(main())
