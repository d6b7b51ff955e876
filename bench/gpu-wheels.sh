#!/usr/bin/env bash
# The wheels bench/gpu.sh needs that the device machine's image lacks (its python3 is 3.12 with torch,
# transformers 5.17, tokenizers, safetensors, pillow, pyyaml, numpy; no pydantic), pinned to the
# versions this project uses, into .whl/ (git-ignored via .git/info/exclude). Run here, where PyPI is
# reachable; the device tool carries .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for spec in pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
    transformers==5.23.0; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$spec"
done
ls -la .whl
