# The two commands a newcomer needs (see README):
#   make demo   set up .venv, then run the main job on the embedded offline default
#   make test   set up .venv, then run the test suite (what .ci/run calls)
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: demo test setup

setup: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first: the CPU build (a looser pin would pull a multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[space,test]"
	touch $(VENV_STAMP)

demo: $(VENV_STAMP)
	$(PY) -m modeling_fli2moe.cli demo $(ARGS)

test: $(VENV_STAMP)
	$(PY) -m pytest -q -ra
