//! The worker's database sessions: the settings they ask for, and what happens when a role may not set them.

#[tokio::test]
async fn sessions_ask_for_wal_compression_and_a_role_that_may_not_set_it_still_connects(
) -> anyhow::Result<()> {
    use cohort::config::{DatabaseConfig, WalCompression};
    use sqlx::postgres::PgConnectOptions;

    let db = cohort_testkit::db::TestDatabase::new().await?;
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(db.pool())
            .await?;
    let server: String = sqlx::query_scalar("SHOW wal_compression")
        .fetch_one(db.pool())
        .await?;

    // The worker's pool, as `database.wal_compression` configures it.
    for (setting, expected) in [(WalCompression::Lz4, "lz4"), (WalCompression::Off, "off")] {
        let config = DatabaseConfig {
            url: db.url().to_owned(),
            wal_compression: setting,
            ..DatabaseConfig::default()
        };
        let pool = cohort::store::connect_lazy(&config)?;
        let session: String = sqlx::query_scalar("SHOW wal_compression")
            .fetch_one(&pool)
            .await?;
        if superuser {
            assert_eq!(session, expected);
        }
        pool.close().await;
    }
    let config = DatabaseConfig {
        url: db.url().to_owned(),
        wal_compression: WalCompression::Server,
        ..DatabaseConfig::default()
    };
    let pool = cohort::store::connect_lazy(&config)?;
    let session: String = sqlx::query_scalar("SHOW wal_compression")
        .fetch_one(&pool)
        .await?;
    assert_eq!(session, server, "`server` leaves the setting alone");
    pool.close().await;

    // A role without the right: refused, warned about, and the connection works with the server's setting.
    if superuser {
        let role = format!("cohort_test_role_{}", cohort_testkit::random_suffix());
        let password = cohort_testkit::random_suffix();
        sqlx::raw_sql(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
            .execute(db.pool())
            .await?;
        let options: PgConnectOptions = db.url().parse()?;
        let result = async {
            let pool = cohort::store::pool_options(WalCompression::Lz4)
                .max_connections(1)
                .connect_with(options.username(&role).password(&password))
                .await?;
            let session: String = sqlx::query_scalar("SHOW wal_compression")
                .fetch_one(&pool)
                .await?;
            let answer: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
            pool.close().await;
            anyhow::Ok((session, answer))
        }
        .await;
        sqlx::raw_sql(&format!("DROP ROLE {role}"))
            .execute(db.pool())
            .await?;
        let (session, answer) = result?;
        assert_eq!(session, server);
        assert_eq!(answer, 1);
    }
    db.cleanup().await
}

#[tokio::test]
async fn a_caught_up_batch_sets_backend_flush_after_for_its_own_transaction_only_and_survives_a_refusal(
) -> anyhow::Result<()> {
    use cohort::store::batch::{commit, BatchWrite};

    let db = cohort_testkit::db::TestDatabase::new().await?;
    cohort::store::migrate(db.pool()).await?;
    sqlx::query("INSERT INTO partition_positions (topic, partition) VALUES ('input', 0)")
        .execute(db.pool())
        .await?;
    // One connection, so the statement after the batch runs on the session the batch used.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(db.url())
        .await?;
    let batch = |next_offset, flush_after_kb| BatchWrite {
        topic: "input".into(),
        partition: 0,
        epoch: 0,
        next_offset,
        flush_after_kb,
        ..BatchWrite::default()
    };
    let show = || sqlx::query_scalar::<_, String>("SHOW backend_flush_after").fetch_one(&pool);
    let before = show().await?;
    assert_ne!(before, "64kB");
    commit(&pool, &batch(1, Some(64))).await?;
    assert_eq!(
        show().await?,
        before,
        "the setting ends with the batch's transaction"
    );
    // The setting is really sent: a value PostgreSQL refuses is noticed. The batch is written without it
    // (a refusal must not stop the worker), and later batches no longer ask.
    assert!(!cohort::store::batch::flush_after_refused());
    commit(&pool, &batch(2, Some(4096))).await?;
    assert!(cohort::store::batch::flush_after_refused());
    let stored = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT next_offset FROM partition_positions WHERE topic = 'input' AND partition = 0",
        )
        .fetch_one(&pool)
    };
    assert_eq!(stored().await?, 2);
    assert_eq!(show().await?, before);
    commit(&pool, &batch(3, Some(4096))).await?;
    assert_eq!(stored().await?, 3);
    pool.close().await;
    db.cleanup().await
}
