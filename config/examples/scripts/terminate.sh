#!/bin/sh
# Example terminate script for the command provider: $1 is the id launch.sh printed.
kill -TERM "${1#pid-}"
