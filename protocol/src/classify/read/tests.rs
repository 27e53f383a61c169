//! Byte tables: query text → `replica`, or the label of why it needs the primary.

use super::*;

/// The verdict as text: `replica`, or [`Why::as_str`].
fn verdict_with(sql: &str, read_only: &dyn Fn(&[u8]) -> bool) -> &'static str {
    match read_verdict(sql.as_bytes(), Syntax::default(), read_only) {
        Verdict::Replica => "replica",
        Verdict::Primary(why) => why.as_str(),
    }
}

fn verdict(sql: &str) -> &'static str {
    verdict_with(sql, &|_| false)
}

#[track_caller]
fn check(table: &[(&str, &str)]) {
    for (sql, want) in table {
        assert_eq!(verdict(sql), *want, "for {sql:?}");
    }
}

#[test]
fn queries_that_only_read_go_to_a_replica() {
    check(&[
        ("SELECT 1", "replica"),
        ("select * from t where a in (1, 2)", "replica"),
        ("SELECT count(*) FROM pgbench_accounts", "replica"),
        (
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            "replica",
        ),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "replica"),
        ("VALUES (1, 'a'), (2, 'b')", "replica"),
        ("TABLE t", "replica"),
        ("SHOW search_path", "replica"),
        ("show all", "replica"),
        ("(SELECT 1) UNION ALL (SELECT 2)", "replica"),
        ("SELECT 1; SELECT 2;", "replica"),
        ("SELECT EXISTS (SELECT 1 FROM t WHERE id = $1)", "replica"),
        (
            "SELECT * FROM t WHERE id = ANY($1) AND NOT (a OR b)",
            "replica",
        ),
        (
            "SELECT CASE WHEN (a > 1) THEN (1) ELSE (2) END FROM t",
            "replica",
        ),
        (
            "SELECT a, count(*) FILTER (WHERE b) OVER (PARTITION BY c) FROM t GROUP BY ROLLUP (a)",
            "replica",
        ),
        (
            "SELECT * FROM t1 JOIN t2 USING (id) JOIN LATERAL (SELECT 1) s ON true",
            "replica",
        ),
        (
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM t",
            "replica",
        ),
        (
            "SELECT * FROM t TABLESAMPLE bernoulli (10) REPEATABLE (1)",
            "replica",
        ),
    ]);
}

#[test]
fn keywords_inside_strings_quotes_and_comments_do_not_count() {
    check(&[
        ("SELECT 'insert'", "replica"),
        (
            "SELECT 'x' AS \"update\", \"delete\" FROM \"copy\"",
            "replica",
        ),
        (
            "SELECT $$ DELETE FROM t $$, $x$ nextval('s') $x$",
            "replica",
        ),
        ("SELECT 1 -- FOR UPDATE\n", "replica"),
        (
            "/* INSERT INTO t */ SELECT 1 /* nested /* INTO */ */",
            "replica",
        ),
        ("SELECT E'\\' INTO t'", "replica"),
        ("SELECT \"nextval\" FROM t", "replica"),
    ]);
}

#[test]
fn writes_anywhere_in_the_string_go_to_the_primary() {
    check(&[
        ("INSERT INTO t VALUES (1)", "writes"),
        ("UPDATE t SET a = 1", "writes"),
        ("delete from t", "writes"),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "writes",
        ),
        ("COPY t TO STDOUT", "writes"),
        ("CREATE TABLE t (a int)", "writes"),
        ("ALTER TABLE t ADD b int", "writes"),
        ("DROP TABLE t", "writes"),
        ("TRUNCATE t", "writes"),
        ("GRANT SELECT ON t TO r", "writes"),
        ("VACUUM t", "writes"),
        ("ANALYZE t", "writes"),
        ("CALL p()", "writes"),
        ("REFRESH MATERIALIZED VIEW v", "writes"),
        ("NOTIFY c", "writes"),
        ("CHECKPOINT", "writes"),
        ("SELECT 1; INSERT INTO t VALUES (1)", "writes"),
        (
            "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
            "writes",
        ),
        (
            "WITH x AS (SELECT 1), y AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM y",
            "writes",
        ),
        (
            "SELECT * FROM t WHERE a IN (SELECT a FROM (INSERT INTO u DEFAULT VALUES) x)",
            "writes",
        ),
        ("EXPLAIN INSERT INTO t VALUES (1)", "writes"),
        ("FETCH 10 FROM c", "unsure"),
    ]);
}

#[test]
fn locking_clauses_and_lock_go_to_the_primary() {
    check(&[
        ("SELECT * FROM t FOR UPDATE", "locks"),
        ("SELECT * FROM t FOR NO KEY UPDATE OF t NOWAIT", "locks"),
        ("SELECT * FROM t FOR SHARE SKIP LOCKED", "locks"),
        ("select * from t for key share", "locks"),
        ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", "locks"),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "locks"),
        // FOR without a lock strength is not a locking clause.
        ("SELECT substring(a FROM 1 FOR 2) FROM t", "replica"),
        ("SELECT * FROM t FOR READ ONLY", "replica"),
    ]);
}

#[test]
fn select_into_creates_a_table() {
    check(&[
        ("SELECT 1 INTO t", "into"),
        ("SELECT * INTO TEMP t FROM u", "into"),
        ("WITH x AS (SELECT 1) SELECT * INTO t FROM x", "into"),
    ]);
}

#[test]
fn calls_of_functions_not_known_to_only_read_go_to_the_primary() {
    check(&[
        ("SELECT nextval('s')", "function"),
        ("SELECT setval('s', 1)", "function"),
        ("SELECT currval('s')", "function"),
        ("SELECT f(1)", "function"),
        ("SELECT \"F\"(1)", "function"),
        ("SELECT public.f(1)", "function"),
        ("SELECT pg_advisory_lock(1)", "function"),
        ("SELECT pg_try_advisory_xact_lock(1)", "function"),
        ("SELECT set_config('a', 'b', false)", "function"),
        ("SELECT txid_current()", "function"),
        ("SELECT pg_catalog.nextval('s')", "function"),
        ("SELECT * FROM t WHERE a = f(b)", "function"),
        ("SELECT * FROM f(1)", "function"),
        ("SELECT * FROM t ORDER BY f(a)", "function"),
        ("SELECT a, f(b) AS c FROM t", "function"),
        ("SELECT a, f(b) FROM t", "function"),
        ("SELECT a, f(b)", "function"),
        ("SELECT a, f(b) AS materialized FROM t", "function"),
        ("SELECT lower(f(a)) FROM t", "function"),
        (
            "SELECT count(*) FROM t WHERE EXISTS (SELECT g(1))",
            "function",
        ),
        ("SELECT U&\"\\0066\"(1)", "function"),
        // An alias's column list without AS after an unquoted name: taken for a call.
        ("SELECT * FROM t x(a)", "function"),
        // A keyword quoted or qualified is a function's name.
        ("SELECT \"exists\"(1)", "function"),
        ("SELECT s.in(1)", "function"),
    ]);
}

#[test]
fn built_in_read_only_functions_and_grammar_parentheses_are_not_calls() {
    check(&[
        ("SELECT lower(name), upper(\"x\") FROM t", "replica"),
        ("SELECT pg_catalog.lower('A')", "replica"),
        ("SELECT \"lower\"('A')", "replica"),
        ("SELECT COALESCE(SUM(amount), 0) FROM t", "replica"),
        (
            "SELECT now(), date_trunc('day', now() - interval '1 day')",
            "replica",
        ),
        ("SELECT EXTRACT(EPOCH FROM t.created_at) FROM t", "replica"),
        (
            "SELECT trim(both ' ' from a), position('a' in b), overlay(a placing 'x' from 1)",
            "replica",
        ),
        ("SELECT x::numeric(10,2)", "replica"),
        (
            "SELECT x :: character varying(20), y::timestamp(3) with time zone",
            "replica",
        ),
        ("SELECT x::pg_catalog.varchar(3)", "replica"),
        ("SELECT CAST(x AS numeric(10, 2)) FROM t", "replica"),
        ("SELECT current_timestamp(3), localtime(0)", "replica"),
        ("SELECT * FROM generate_series(1,3) AS g(i)", "replica"),
        ("SELECT * FROM generate_series(1,3) g(i)", "replica"),
        ("SELECT * FROM \"t\" x(a, b)", "replica"),
        (
            "SELECT * FROM unnest($1::int[]) WITH ORDINALITY AS u(v, n)",
            "replica",
        ),
        ("SELECT ARRAY(SELECT 1), ROW(1, 2)", "replica"),
        ("SELECT json_agg(row_to_json(t)) FROM t", "replica"),
        (
            "SELECT version(), pg_is_in_recovery(), current_setting('x')",
            "replica",
        ),
        (
            "SELECT * FROM t WHERE a = 1 LIMIT (5) OFFSET (10)",
            "replica",
        ),
        ("SELECT DISTINCT ON (a) a FROM t", "replica"),
        ("SELECT (a, b) OVERLAPS (c, d) FROM t", "replica"),
        ("SELECT * FROM t WHERE a SIMILAR TO ('x')", "replica"),
        ("SELECT 1 FROM t WINDOW w AS (PARTITION BY a)", "replica"),
        (
            "SELECT 1 FROM ROWS FROM (generate_series(1, 2), unnest($1)) AS r(a, b)",
            "replica",
        ),
    ]);
}

#[test]
fn column_lists_of_common_table_expressions_are_not_calls() {
    check(&[
        ("WITH t(a, b) AS (SELECT 1, 2) SELECT * FROM t", "replica"),
        (
            "WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM t WHERE n < 5) \
             SELECT sum(n) FROM t",
            "replica",
        ),
        (
            "WITH a AS (SELECT 1), b(x) AS MATERIALIZED (SELECT 2) TABLE b",
            "replica",
        ),
        (
            "WITH a(x) AS NOT MATERIALIZED (SELECT 2) TABLE a",
            "replica",
        ),
        ("WITH a(x) AS (SELECT f(1)) TABLE a", "function"),
        ("WITH a(x", "function"),
    ]);
}

#[test]
fn the_callback_decides_for_functions_outside_the_list() {
    let f_only = |name: &[u8]| name == b"f";
    let table = [
        ("SELECT f(1)", "replica"),
        ("SELECT F(1)", "replica"),
        ("SELECT \"F\"(1)", "function"),
        ("SELECT app.f(1)", "replica"),
        ("SELECT pg_catalog.f(1)", "function"),
        ("SELECT g(1)", "function"),
        ("SELECT a, f(b) FROM t", "replica"),
    ];
    for (sql, want) in table {
        assert_eq!(verdict_with(sql, &f_only), want, "for {sql:?}");
    }
    // Words that write stay with the primary whatever the callback says.
    assert_eq!(verdict_with("SELECT nextval('s')", &|_| true), "function");
    assert_eq!(verdict_with("SELECT x.nextval('s')", &|_| true), "replica");
}

#[test]
fn explain_without_analyze_of_a_read_goes_to_a_replica() {
    check(&[
        ("EXPLAIN SELECT 1", "replica"),
        ("EXPLAIN VERBOSE SELECT * FROM t", "replica"),
        (
            "EXPLAIN (COSTS OFF, FORMAT JSON) WITH x AS (SELECT 1) TABLE x",
            "replica",
        ),
        ("EXPLAIN ANALYZE SELECT 1", "unsure"),
        ("explain analyse select 1", "unsure"),
        ("EXPLAIN (ANALYZE) SELECT 1", "unsure"),
        ("EXPLAIN (FORMAT TEXT, ANALYZE true) SELECT 1", "unsure"),
        ("EXPLAIN (ANALYZE false) SELECT 1", "unsure"),
        ("EXPLAIN SELECT nextval('s')", "function"),
        ("EXPLAIN EXECUTE q", "session"),
        ("EXPLAIN", "unsure"),
        ("EXPLAIN (COSTS OFF", "unsure"),
    ]);
}

#[test]
fn read_only_transaction_blocks_go_to_a_replica() {
    check(&[
        ("BEGIN READ ONLY", "replica"),
        ("BEGIN READ ONLY; SELECT 1; COMMIT", "replica"),
        ("START TRANSACTION READ ONLY; SELECT 1; END", "replica"),
        (
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY, DEFERRABLE; SELECT 1",
            "replica",
        ),
        (
            "begin transaction read only isolation level serializable",
            "replica",
        ),
        (
            "BEGIN; SET TRANSACTION READ ONLY; SELECT 1; ROLLBACK",
            "replica",
        ),
        (
            "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY",
            "replica",
        ),
        (
            "BEGIN READ ONLY; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "replica",
        ),
        (
            "BEGIN READ ONLY; SAVEPOINT a; SELECT 1; ROLLBACK TO a; RELEASE a; COMMIT",
            "replica",
        ),
        ("BEGIN READ ONLY; SELECT 1; COMMIT; SELECT 2", "replica"),
        ("BEGIN READ ONLY; SELECT 1; ABORT", "replica"),
    ]);
}

#[test]
fn other_transaction_control_goes_to_the_primary() {
    check(&[
        ("BEGIN", "transaction"),
        ("BEGIN; SELECT 1", "transaction"),
        ("START TRANSACTION", "transaction"),
        ("BEGIN READ WRITE", "transaction"),
        ("BEGIN READ ONLY, READ WRITE", "transaction"),
        ("BEGIN ISOLATION LEVEL READ COMMITTED", "transaction"),
        ("BEGIN; SELECT 1; SET TRANSACTION READ ONLY", "transaction"),
        (
            "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "transaction",
        ),
        ("BEGIN READ ONLY; SET TRANSACTION READ WRITE", "transaction"),
        ("BEGIN READ ONLY; BEGIN READ ONLY", "transaction"),
        ("BEGIN READ ONLY; INSERT INTO t VALUES (1)", "writes"),
        ("BEGIN READ ONLY; SELECT 1; COMMIT; BEGIN", "transaction"),
        ("BEGIN READ ONLY; COMMIT PREPARED 'x'", "transaction"),
        ("BEGIN READ ONLY; SELECT 1; COMMIT; COMMIT", "transaction"),
        ("COMMIT", "transaction"),
        ("ROLLBACK", "transaction"),
        ("SAVEPOINT a", "transaction"),
        ("PREPARE TRANSACTION 'x'", "transaction"),
        ("SET TRANSACTION READ ONLY", "session"),
    ]);
}

#[test]
fn session_state_goes_to_the_primary() {
    check(&[
        ("SET search_path = a", "session"),
        ("SET LOCAL statement_timeout = 0", "session"),
        ("RESET ALL", "session"),
        ("LISTEN c", "session"),
        ("UNLISTEN *", "session"),
        ("PREPARE q AS SELECT 1", "session"),
        ("EXECUTE q", "session"),
        ("DEALLOCATE ALL", "session"),
        ("DISCARD ALL", "session"),
        ("LOAD 'x'", "session"),
        ("DO $$ BEGIN END $$", "session"),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "session"),
        ("SELECT 1; SET a = 1", "session"),
        ("BEGIN READ ONLY; SET a = 1", "session"),
    ]);
}

#[test]
fn text_not_understood_goes_to_the_primary() {
    check(&[
        ("", "unsure"),
        (" ; -- nothing\n ; /* */", "unsure"),
        ("SELECT 'abc", "unsure"),
        ("SELECT 1; SELECT \"abc", "unsure"),
        ("SELECT $$ abc", "unsure"),
        ("SELECT 1 /* /* */", "unsure"),
        ("SELECT E'\\'", "unsure"),
        ("FOO BAR", "unsure"),
        ("; )", "unsure"),
    ]);
    let off = Syntax {
        standard_conforming_strings: false,
    };
    let run = |sql: &[u8]| read_verdict(sql, off, &|_| false);
    assert_eq!(run(b"SELECT 'a\\'; DELETE FROM t'"), Verdict::Replica);
    assert_eq!(run(b"SELECT 'a\\'"), Verdict::Primary(Why::Unsure));
}

#[test]
fn unquoted_columns_named_like_commands_go_to_the_primary_unless_qualified() {
    check(&[
        ("SELECT comment FROM posts", "writes"),
        ("SELECT \"comment\" FROM posts", "replica"),
        ("SELECT p.comment, p.lock FROM posts p", "replica"),
        ("SELECT c1_0.id, c1_0.comment FROM comments c1_0", "replica"),
    ]);
}

#[test]
fn orm_shaped_queries_go_to_a_replica() {
    check(&[
        // Django.
        (
            "SELECT \"blog_entry\".\"id\", \"blog_entry\".\"headline\", \"blog_entry\".\"pub_date\" \
             FROM \"blog_entry\" INNER JOIN \"blog_blog\" ON (\"blog_entry\".\"blog_id\" = \
             \"blog_blog\".\"id\") WHERE (\"blog_blog\".\"name\" = $1 AND \
             \"blog_entry\".\"pub_date\" >= $2) ORDER BY \"blog_entry\".\"pub_date\" DESC LIMIT 21",
            "replica",
        ),
        (
            "SELECT COUNT(*) AS \"__count\" FROM \"auth_user\" WHERE \"auth_user\".\"is_active\"",
            "replica",
        ),
        // Rails.
        (
            "SELECT \"users\".* FROM \"users\" WHERE \"users\".\"email\" = $1 LIMIT $2",
            "replica",
        ),
        (
            "SELECT \"posts\".* FROM \"posts\" WHERE \"posts\".\"user_id\" IN ($1, $2, $3) \
             ORDER BY \"posts\".\"created_at\" DESC LIMIT $4 OFFSET $5",
            "replica",
        ),
        // Hibernate 6.
        (
            "select o1_0.id,o1_0.status,o1_0.total from orders o1_0 join customers c1_0 on \
             c1_0.id=o1_0.customer_id where c1_0.email=$1 and o1_0.status in ($2,$3) order by \
             o1_0.created_at desc offset $4 rows fetch first $5 rows only",
            "replica",
        ),
        // SQLAlchemy.
        (
            "SELECT users.id AS users_id, users.name AS users_name FROM users WHERE users.id = $1",
            "replica",
        ),
        // Rails' schema reflection.
        (
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, \
             d.adrelid), a.attnotnull, c.collname, col_description(a.attrelid, a.attnum) AS \
             comment FROM pg_attribute a LEFT JOIN pg_attrdef d ON a.attrelid = d.adrelid AND \
             a.attnum = d.adnum LEFT JOIN pg_type t ON a.atttypid = t.oid LEFT JOIN pg_collation \
             c ON a.attcollation = c.oid AND a.attcollation <> t.typcollation WHERE a.attrelid = \
             '\"users\"'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            "writes", // the alias `comment`, unquoted
        ),
    ]);
}
