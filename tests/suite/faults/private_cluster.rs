//! The private cluster the PostgreSQL scenario restarts (`cohort_testkit::cluster`): it restarts alone and
//! leaves nothing behind.

use cohort_testkit::cluster::server_start_time;
use cohort_testkit::faults::{shared_server_start_time, Outage};

/// The private cluster's guard: the cluster serves on its own port, a restart changes its start time
/// (and not the shared server's), and dropping the guard stops the server and removes its folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_cluster_restarts_alone_and_is_gone_once_dropped() -> anyhow::Result<()> {
    let shared_started = shared_server_start_time().await?;
    let cluster = match Outage::prepare().await? {
        Outage::Private(cluster) => cluster,
        Outage::CutOff { why } => {
            eprintln!("faults: no private postgresql cluster ({why}); nothing to check");
            return Ok(());
        }
    };
    let (url, folder) = (cluster.admin_url(), cluster.folder().to_path_buf());
    assert!(folder.join("data").is_dir(), "{}", folder.display());
    let before = server_start_time(&url).await?;
    cluster.restart().await?;
    let after = server_start_time(&url).await?;
    assert_ne!(before, after, "the private cluster was restarted");
    drop(cluster);
    assert!(!folder.exists(), "{} was removed", folder.display());
    assert!(
        cohort_testkit::db::connect(&url).await.is_err(),
        "the private cluster's server is stopped"
    );
    assert_eq!(
        shared_server_start_time().await?,
        shared_started,
        "the server the other tests share was not restarted"
    );
    Ok(())
}
