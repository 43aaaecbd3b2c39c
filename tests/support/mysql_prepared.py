"""Drive MySQL/MariaDB's binary protocol (server-side prepared statements).

Uses mysql-connector-python (pinned in requirements.txt), pure-Python
implementation, whose ``cursor(prepared=True)`` sends COM_STMT_PREPARE once
and then one COM_STMT_EXECUTE per ``execute()`` (binary result-set rows), and
COM_STMT_CLOSE when the cursor closes.  PyMySQL would not do: it only
interpolates parameters client-side and sends COM_QUERY.

TLS is disabled so the traffic on loopback is plaintext.
"""

from __future__ import annotations

SELECT_SQL = "SELECT ? + 1 AS n, CONCAT('row-', ?) AS s"


def connect(port: int, user: str, password: str, *, host: str = "127.0.0.1",
            database: str | None = None, timeout: float = 10.0):
    import mysql.connector  # imported lazily: only tests that need it pay

    kw = dict(host=host, port=port, user=user, password=password,
              use_pure=True, ssl_disabled=True, connection_timeout=int(timeout),
              autocommit=True)
    if database:
        kw["database"] = database
    return mysql.connector.connect(**kw)


def run_prepared(port: int, user: str, password: str, n: int, *,
                 host: str = "127.0.0.1", database: str | None = None,
                 sql: str = SELECT_SQL) -> int:
    """Prepare ``sql`` once and execute it ``n`` times via COM_STMT_EXECUTE.

    ``sql`` takes two ``?`` parameters (given i and i).  Returns how many
    executions completed and returned the expected single row."""
    if n < 0:
        raise ValueError("n must be >= 0")
    done = 0
    cnx = connect(port, user, password, host=host, database=database)
    try:
        cur = cnx.cursor(prepared=True)
        try:
            for i in range(n):
                cur.execute(sql, (i, i))
                rows = cur.fetchall()
                if len(rows) == 1:
                    done += 1
        finally:
            cur.close()
    finally:
        cnx.close()
    return done
