"""Celery configuration for Flower on a TLS Redis (docker-compose.redis-tls.yml), read as
CELERY_CONFIG_MODULE by the stock Flower image (it has no app of ours).

Flower's events follow the broker URL, whose ssl_* query kombu reads; its queue lengths
(the Broker page, /api/queues/length) open a connection of their own from the app's
broker_use_ssl, which without this file is unset: for a rediss:// broker Flower then
verifies against the system's CAs only, and the page fails on a certificate of our own CA.
"""

import os
import ssl

broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED,
                  "ssl_ca_certs": os.environ["MYSISTERDB_REDIS_TLS_CA_FILE"]}
