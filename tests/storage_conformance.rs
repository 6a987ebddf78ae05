//! openraft's own storage conformance suite, run against ondisk's RocksDB log store and state
//! machine, plus the restart property the on-disk design exists for.

use ondisk::store::LogStore;
use ondisk::store::StateMachineStore;
use ondisk::types::Command;
use ondisk::types::Entry;
use ondisk::types::TypeConfig;
use openraft::entry::RaftEntry;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::testing::log_id;
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;
use tempfile::TempDir;

/// Opens a fresh log store and state machine in a temporary directory for each suite case.
struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir =
            TempDir::new().map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
        let open_failed = |e: ondisk::Error| StorageError::write(TypeConfig::err_from_string(e));
        let log = LogStore::open(&dir.path().join("raft-log")).map_err(open_failed)?;
        let sm = StateMachineStore::open(&dir.path().join("state"), dir.path().join("snapshots"))
            .map_err(open_failed)?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_stores_pass_the_openraft_storage_suite() {
    Suite::test_all(RocksBuilder).await.expect("storage suite");
}

/// The on-disk promise: what was applied is still applied after a reopen, with the data it
/// describes, so a restarted node replays nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_state_machine_resumes_at_its_applied_index_with_its_data() {
    let (dir, mut log, mut sm) = RocksBuilder.build().await.expect("open stores");
    let vote = openraft::Vote::new_committed(3, 1);
    log.save_vote(&vote).await.expect("save vote");
    let entries = (1..=3u64).map(|index| {
        let command = Command::Put(ondisk::api::PutRequest {
            key: format!("key{index}").into_bytes(),
            value: vec![0xff, index as u8],
            ..ondisk::api::PutRequest::default()
        });
        Ok((
            Entry::new_normal(log_id::<TypeConfig>(3, 1, index), command),
            None,
        ))
    });
    sm.apply(futures::stream::iter(entries))
        .await
        .expect("apply");
    drop((log, sm));

    let mut log = LogStore::open(&dir.path().join("raft-log")).expect("reopen log");
    let mut sm = StateMachineStore::open(&dir.path().join("state"), dir.path().join("snapshots"))
        .expect("reopen state");
    assert_eq!(
        openraft::RaftLogReader::read_vote(&mut log)
            .await
            .expect("read vote"),
        Some(vote)
    );
    let (applied, _) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id::<TypeConfig>(3, 1, 3)));
    assert_eq!(sm.reader().get(b"key2").expect("read"), Some(vec![0xff, 2]));
    assert_eq!(sm.reader().applied_this_run(), 0);
}
