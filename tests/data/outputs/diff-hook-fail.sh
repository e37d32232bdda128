#!/bin/sh
echo "never shown"
exit 2
