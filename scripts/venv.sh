# Sourced by test.sh and demo.sh: make .venv (installing Debian's python3-venv
# if this Python lacks it) and install safcm into it, editable, with the extras
# given as the first argument ("" or "[dev]").
safcm_venv() {
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        apt-get update -q && apt-get install -y -q python3-venv
    fi
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip "setuptools>=77"  # a wheel is built offline in the tests
    .venv/bin/python -m pip install -q -e ".$1"
}
