#!/bin/sh
echo "failing for $DRV_PATH"
exit 3
