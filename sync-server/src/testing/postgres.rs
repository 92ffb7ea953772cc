//! PostgreSQL for tests: `initdb` + `pg_ctl` as the `postgres` user.
