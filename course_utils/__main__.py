"""``python -m course_utils run ...``: see :mod:`course_utils.runner`."""

import sys

from course_utils.runner import main

if __name__ == "__main__":
    sys.exit(main())
