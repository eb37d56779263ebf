# The one image of every process type (compose.yaml, or any container platform with the Procfile's commands).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput -v 0
# A named volume mounted at /metrics takes this directory's owner on first use.
RUN useradd --system jobsite && mkdir -p /metrics var && chown jobsite /metrics var
USER jobsite
EXPOSE 8000
CMD ["gunicorn", "--config", "gunicorn.conf.py"]
