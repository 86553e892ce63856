# The course image: Python, the course's packages (llama-cpp-python compiled from source) and
# JupyterLab. docker-compose.yml runs it twice: as "jupyter" and as "chatbot".
#
#   docker compose build              # or: docker build -t llm-experiment:local .
#
# Files owned by you on this computer: the notebooks folder is mounted into the container, and
# the container's user has the id 1000. If `id -u` says otherwise, build with
#   docker compose build --build-arg NB_UID=$(id -u)
FROM python:3.11-slim

# C/C++ compiler and CMake: pip compiles llama-cpp-python (llama.cpp) from source, about 5 minutes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# The pinned packages first, without the course package itself (the "-e ." line): this slow
# layer is then rebuilt only when the requirements change, not at every change of the code.
# The full set (requirements.txt: the client set, requirements-client.txt, plus the embedded engine),
# so that the image can also run engines (notebook 09's instructor half).
COPY requirements.txt requirements-client.txt ./
RUN mkdir /tmp/pins \
    && grep -v '^-e ' requirements-client.txt > /tmp/pins/requirements-client.txt \
    && grep -v '^-e ' requirements.txt > /tmp/pins/requirements.txt \
    && pip install -r /tmp/pins/requirements.txt \
    && rm -r /tmp/pins

# Then the course (see .dockerignore for what is left out) and the "-e ." line of requirements-client.txt.
COPY . .
RUN pip install --no-deps -e .

# Run as an ordinary user, not as root.
ARG NB_UID=1000
RUN useradd --create-home --uid "${NB_UID}" --shell /bin/bash student \
    && chown -R student /app/notebooks
USER student

# The server: docker-compose.yml sets OLLAMA_HOST=http://ollama:11434, its "ollama" service.
EXPOSE 8888
# JupyterLab on every interface of the container (its port is published by docker compose), showing the
# notebooks. The token comes from JUPYTER_TOKEN; without it Jupyter makes a random one and prints it.
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--ServerApp.root_dir=/app/notebooks"]
