#!/usr/bin/env bash
# Makes a self-signed development certificate (EC P-256, 10 years) for localhost, 127.0.0.1 and
# *.weir.test into certs/dev.pem and certs/dev.key. Never use it outside development.
set -euo pipefail
cd "$(dirname "$0")"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
  -subj "/CN=weir development" \
  -addext "subjectAltName=DNS:localhost,DNS:weir.test,DNS:*.weir.test,IP:127.0.0.1,IP:::1" \
  -keyout dev.key -out dev.pem
echo "wrote $(pwd)/dev.pem and $(pwd)/dev.key"
