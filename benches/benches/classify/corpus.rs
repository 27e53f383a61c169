// The query strings of the `classify` bench, included with `include!` (no module header, so that
// a throwaway comparison project can include the same file): each with whether `read_verdict`
// sends it to a replica.

/// pgbench's statements (select-only and TPC-B, extended and simple protocol), ORM-shaped
/// SELECTs of 300 to 1,500 bytes, and the writes and session commands applications send.
pub const QUERIES: &[(&str, bool)] = &[
    // pgbench -S (extended and simple protocol).
    ("SELECT abalance FROM pgbench_accounts WHERE aid = $1;", true),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 48210;", true),
    // pgbench TPC-B: BEGIN, the five statements, END.
    ("BEGIN;", false),
    ("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;", false),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = $1;", true),
    ("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;", false),
    ("UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2;", false),
    (
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
        false,
    ),
    ("END;", false),
    // Django: a list view with a join, and its count.
    (
        r#"SELECT "blog_entry"."id", "blog_entry"."blog_id", "blog_entry"."headline", "blog_entry"."body_text", "blog_entry"."pub_date", "blog_entry"."mod_date", "blog_entry"."number_of_comments", "blog_entry"."number_of_pingbacks", "blog_entry"."rating", "blog_blog"."id", "blog_blog"."name", "blog_blog"."tagline" FROM "blog_entry" INNER JOIN "blog_blog" ON ("blog_entry"."blog_id" = "blog_blog"."id") WHERE ("blog_blog"."name" = $1 AND "blog_entry"."pub_date" >= $2 AND NOT ("blog_entry"."rating" IS NULL)) ORDER BY "blog_entry"."pub_date" DESC, "blog_entry"."id" ASC LIMIT 21 OFFSET 40"#,
        true,
    ),
    (
        r#"SELECT COUNT(*) AS "__count" FROM "blog_entry" INNER JOIN "blog_blog" ON ("blog_entry"."blog_id" = "blog_blog"."id") WHERE ("blog_blog"."name" = $1 AND "blog_entry"."pub_date" >= $2 AND UPPER("blog_entry"."headline"::text) LIKE UPPER($3))"#,
        true,
    ),
    // Rails: a page of posts with an IN list, and a large preload by id.
    (
        r#"SELECT "posts".* FROM "posts" INNER JOIN "comments" ON "comments"."post_id" = "posts"."id" WHERE "posts"."user_id" IN ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) AND "posts"."published_at" IS NOT NULL AND "comments"."spam" = $11 ORDER BY "posts"."created_at" DESC LIMIT $12 OFFSET $13"#,
        true,
    ),
    (
        r#"SELECT "line_items".* FROM "line_items" WHERE "line_items"."order_id" IN (1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015, 1016, 1017, 1018, 1019, 1020, 1021, 1022, 1023, 1024, 1025, 1026, 1027, 1028, 1029, 1030, 1031, 1032, 1033, 1034, 1035, 1036, 1037, 1038, 1039, 1040, 1041, 1042, 1043, 1044, 1045, 1046, 1047, 1048, 1049, 1050, 1051, 1052, 1053, 1054, 1055, 1056, 1057, 1058, 1059, 1060, 1061, 1062, 1063, 1064, 1065, 1066, 1067, 1068, 1069, 1070, 1071, 1072, 1073, 1074, 1075, 1076, 1077, 1078, 1079, 1080, 1081, 1082, 1083, 1084, 1085, 1086, 1087, 1088, 1089, 1090, 1091, 1092, 1093, 1094, 1095, 1096, 1097, 1098, 1099, 1100, 1101, 1102, 1103, 1104, 1105, 1106, 1107, 1108, 1109, 1110, 1111, 1112, 1113, 1114, 1115, 1116, 1117, 1118, 1119, 1120, 1121, 1122, 1123, 1124, 1125, 1126, 1127, 1128, 1129, 1130, 1131, 1132, 1133, 1134, 1135, 1136, 1137, 1138, 1139, 1140, 1141, 1142, 1143, 1144, 1145, 1146, 1147, 1148, 1149, 1150, 1151, 1152, 1153, 1154, 1155, 1156, 1157, 1158, 1159, 1160, 1161, 1162, 1163, 1164, 1165, 1166, 1167, 1168, 1169, 1170, 1171, 1172, 1173, 1174, 1175, 1176, 1177, 1178, 1179, 1180, 1181, 1182, 1183, 1184, 1185, 1186, 1187, 1188, 1189, 1190, 1191, 1192, 1193, 1194, 1195, 1196, 1197, 1198, 1199, 1200, 1201, 1202, 1203, 1204, 1205, 1206, 1207, 1208, 1209, 1210, 1211, 1212, 1213, 1214, 1215, 1216, 1217, 1218, 1219, 1220, 1221, 1222, 1223, 1224, 1225, 1226, 1227, 1228, 1229, 1230) ORDER BY "line_items"."position" ASC"#,
        true,
    ),
    // Hibernate 6: a fetch join with unquoted, alias-qualified columns.
    (
        "select o1_0.id,o1_0.created_at,o1_0.customer_id,c1_0.id,c1_0.email,c1_0.first_name,c1_0.last_name,c1_0.created_at,o1_0.shipping_address_id,sa1_0.id,sa1_0.city,sa1_0.country,sa1_0.line1,sa1_0.line2,sa1_0.postal_code,o1_0.status,o1_0.total_amount,o1_0.currency,o1_0.version,i1_0.order_id,i1_0.id,i1_0.product_id,i1_0.quantity,i1_0.unit_price from orders o1_0 join customers c1_0 on c1_0.id=o1_0.customer_id left join addresses sa1_0 on sa1_0.id=o1_0.shipping_address_id left join order_items i1_0 on o1_0.id=i1_0.order_id where c1_0.email=$1 and o1_0.status in ($2,$3,$4) and o1_0.created_at between $5 and $6 order by o1_0.created_at desc,o1_0.id offset $7 rows fetch first $8 rows only",
        true,
    ),
    // SQLAlchemy: labelled columns, an outer join, a subquery.
    (
        "SELECT users.id AS users_id, users.name AS users_name, users.fullname AS users_fullname, users.nickname AS users_nickname, addresses_1.id AS addresses_1_id, addresses_1.email_address AS addresses_1_email_address, addresses_1.user_id AS addresses_1_user_id FROM users LEFT OUTER JOIN addresses AS addresses_1 ON users.id = addresses_1.user_id WHERE users.name = $1 AND users.id IN (SELECT orders.user_id FROM orders WHERE orders.total > $2 AND orders.placed_at >= now() - interval '30 days') ORDER BY users.id, addresses_1.id",
        true,
    ),
    // Prisma: schema-qualified quoted names, 1=1, LIMIT/OFFSET.
    (
        r#"SELECT "public"."User"."id", "public"."User"."email", "public"."User"."name", "public"."User"."role", "public"."User"."createdAt", "public"."User"."updatedAt" FROM "public"."User" WHERE ("public"."User"."email" ILIKE $1 AND "public"."User"."deletedAt" IS NULL AND 1=1) ORDER BY "public"."User"."createdAt" DESC LIMIT $2 OFFSET $3"#,
        true,
    ),
    // A report: CTE, aggregates, date_trunc, COALESCE, window function.
    (
        "WITH daily AS (SELECT date_trunc('day', o.created_at) AS day, o.customer_id, COALESCE(SUM(i.quantity * i.unit_price), 0) AS revenue, COUNT(DISTINCT o.id) AS orders FROM orders o LEFT JOIN order_items i ON i.order_id = o.id WHERE o.created_at >= $1::timestamptz AND o.created_at < $2::timestamptz AND o.status <> 'cancelled' GROUP BY 1, 2) SELECT day, customer_id, revenue, orders, rank() OVER (PARTITION BY day ORDER BY revenue DESC) AS rnk, round(revenue / NULLIF(orders, 0), 2)::numeric(12,2) AS avg_order FROM daily WHERE revenue > 0 ORDER BY day, rnk LIMIT 100",
        true,
    ),
    // PostgREST-shaped JSON aggregation.
    (
        r#"WITH pgrst_source AS (SELECT "api"."films"."id", "api"."films"."title", COALESCE((SELECT json_agg("films_actors".*) FROM (SELECT "api"."actors"."first_name", "api"."actors"."last_name" FROM "api"."actors" INNER JOIN "api"."roles" ON "api"."roles"."actor_id" = "api"."actors"."id" WHERE "api"."roles"."film_id" = "api"."films"."id") AS "films_actors"), '[]') AS "actors" FROM "api"."films" WHERE "api"."films"."year" = $1 LIMIT $2 OFFSET $3) SELECT null::bigint AS total_result_set, pg_catalog.count(_postgrest_t) AS page_total, coalesce(json_agg(_postgrest_t), '[]') AS body FROM (SELECT * FROM pgrst_source) _postgrest_t"#,
        true,
    ),
    // psql's \d: catalog functions qualified with pg_catalog.
    (
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true) FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef), a.attnotnull, (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation) AS attcollation, a.attidentity, a.attgenerated FROM pg_catalog.pg_attribute a WHERE a.attrelid = '16384' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        true,
    ),
    // A read-only transaction in one string, and SHOW.
    (
        r#"BEGIN READ ONLY; SELECT "accounts"."id", "accounts"."balance" FROM "accounts" WHERE "accounts"."owner_id" = $1; COMMIT"#,
        true,
    ),
    ("SHOW TRANSACTION ISOLATION LEVEL", true),
    // Writes and session commands.
    (
        r#"INSERT INTO "blog_entry" ("blog_id", "headline", "body_text", "pub_date", "mod_date", "number_of_comments", "number_of_pingbacks", "rating") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING "blog_entry"."id""#,
        false,
    ),
    (
        r#"UPDATE "users" SET "last_sign_in_at" = $1, "sign_in_count" = $2, "updated_at" = $3 WHERE "users"."id" = $4"#,
        false,
    ),
    (
        "select o1_0.id,o1_0.status,o1_0.version from orders o1_0 where o1_0.id=$1 for no key update",
        false,
    ),
    ("SELECT nextval('orders_id_seq')", false),
    (r#"SET search_path TO "app", public"#, false),
];
