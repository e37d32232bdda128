#!/bin/sh
echo "DRV_PATH=$DRV_PATH"
echo "to stderr" >&2
printf 'no newline'
