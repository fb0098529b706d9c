#!/usr/bin/env bash
# Make a demo PKI with openssl: the same set `ward demo` makes with rcgen.
#   ca.pem/ca.key          demo CA (ECDSA P-256)
#   server.pem/server.key  server certificate for localhost and 127.0.0.1 (serverAuth)
#   client.pem/client.key  client certificate CN=demo-client (clientAuth)
# DEMO ONLY: never use these keys for anything real.
set -euo pipefail
out="${1:-$(dirname "$0")/demo}"
mkdir -p "$out"
cd "$out"
days=365

openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=Ward Demo CA (not for production)" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
  -out ca.pem

openssl ecparam -name prime256v1 -genkey -noout -out server.key
openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
  -extfile server.ext -out server.pem

openssl ecparam -name prime256v1 -genkey -noout -out client.key
openssl req -new -key client.key -subj "/CN=demo-client" -out client.csr
printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
  -extfile client.ext -out client.pem

# rustls wants PKCS#8 keys or SEC1; convert to PKCS#8 for uniformity.
for k in ca server client; do
  openssl pkcs8 -topk8 -nocrypt -in "$k.key" -out "$k.key.p8" && mv "$k.key.p8" "$k.key"
done
chmod 600 ./*.key
rm -f ./*.csr ./*.ext ./*.srl
echo "demo PKI written to $out"
