#!/usr/bin/env bash
# Builds the HAPI FHIR test server: hapi/target/procfhir-hapi-server.jar (an executable jar).
# Needs Java 17+ and Maven; the first build downloads HAPI FHIR 8.8.0 and Spring Boot 3.5 from
# Maven Central into ~/.m2, later builds work offline.
set -euo pipefail
cd "$(dirname "$0")"
for tool in java mvn; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "hapi/build.sh: '$tool' not found on PATH (needs Java 17+ and Maven 3.8+)" >&2
    exit 2
  fi
done
java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p' | cut -d. -f1)
if [ -z "$java_major" ] || [ "$java_major" -lt 17 ]; then
  echo "hapi/build.sh: Java 17 or newer is needed (found: ${java_major:-unknown})" >&2
  exit 2
fi
# Offline first (everything already in ~/.m2), online otherwise (first run, or new dependencies).
if ! mvn -q -B -o package -DskipTests >/dev/null 2>&1; then
  mvn -q -B package -DskipTests
fi
# Maven rewrites its output in place; servers running from the previous jar keep their open
# file when the new one is renamed over it.
test -s target/procfhir-hapi-server-build.jar
cp target/procfhir-hapi-server-build.jar target/.procfhir-hapi-server.jar.tmp
mv -f target/.procfhir-hapi-server.jar.tmp target/procfhir-hapi-server.jar
echo "built $(pwd)/target/procfhir-hapi-server.jar"
