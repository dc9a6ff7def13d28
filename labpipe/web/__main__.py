"""python -m labpipe.web: labpipe-web."""

from labpipe.web.main import main

main()
