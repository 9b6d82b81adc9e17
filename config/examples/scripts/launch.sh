#!/bin/sh
# Example launch script for the command provider: starts one simulated backend on a free
# loopback port, in the background, and prints its id and address as JSON (the last stdout
# line is what ebbtide reads). A real one would call a cloud API and wait for an address.
set -e
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${EBBTIDE:-ebbtide}" backend --listen "127.0.0.1:$port" --service-time exp:20ms --workers 4 \
    --boot container </dev/null >/dev/null 2>&1 &
echo "{\"id\": \"pid-$!\", \"address\": \"127.0.0.1:$port\"}"
