# crmbridge live bridge: `docker build -t crmbridge .` then
#   docker run -d --name crmbridge --env-file .env -p 127.0.0.1:8024:8024 -v crmbridge-data:/data crmbridge
# The cache lives on the volume (/data); mapping and job files are baked in from mappings/ and jobs/
# (mount your own over /app/mappings and /app/jobs). Put TLS in front of port 8024.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    CRMBRIDGE_CACHE_PATH=/data/crmbridge.db CRMBRIDGE_MAPPINGS_DIR=/app/mappings CRMBRIDGE_JOBS_DIR=/app/jobs

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && useradd --system --uid 10001 --home /app crmbridge && mkdir /data && chown crmbridge /data
COPY mappings ./mappings
COPY jobs ./jobs

USER crmbridge
VOLUME ["/data"]
EXPOSE 8024
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8024/livez', timeout=4).status == 200 else 1)"
# exec form: SIGTERM reaches crmbridge, which finishes the batch in flight and exits 0
CMD ["crmbridge", "serve", "--host", "0.0.0.0", "--port", "8024"]
