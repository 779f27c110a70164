"""goldsmith's tasks. This file is a table of contents: the logic lives in the goldsmith package.

./run --list     every task with its help
"""

from goldsmith.tasks import namespace

ns = namespace()
