//! `reconcile`: compares Stripe's customers with the contacts the sink keeps in Dataverse,
//! reports the drift, and with `--repair` writes corrective records to `customers.normalized`
//! for the sink to apply through its normal staleness guard.
//!
//! Modules, from the outside in:
//! * [`config`]: [`ReconcileConfig`], every setting with its default, validated at start-up.
//! * [`stripe`]: what the run needs of Stripe ([`stripe::CustomerSource`]), implemented by
//!   `common::stripe::StripeClient`.
//! * [`dataverse`]: the sink's contacts, paged, through the sink's own HTTP transport.
//! * [`compare`]: the comparison and the corrective records. Pure.
//! * [`report`]: the table and the JSON of one [`report::Report`].
//! * [`repair`]: producing the corrective records as the enricher produces its output.
//! * [`pace`]: requests per second, per side.
//!
//! [`reconcile`] runs one pass; `main.rs` parses the command line and prints.

pub mod compare;
pub mod config;
pub mod dataverse;
pub mod pace;
pub mod repair;
pub mod report;
pub mod stripe;

use std::collections::BTreeSet;

use anyhow::Context as _;
use sink_dataverse::mapping::Columns;

pub use config::ReconcileConfig;

use crate::{
    compare::{Plan, StripeRead, StripeState},
    dataverse::ContactLister,
    report::Report,
    stripe::{CustomerSource, Lookup},
};

/// One pass: list Stripe's customers, then the sink's contacts, ask Stripe about every contact
/// it did not list, compare, and with `repair` write the corrective records. Stripe is read
/// first so that a contact the pipeline updates meanwhile carries a newer stamp than the read
/// and is recognised as ahead, not drifted.
pub async fn reconcile<S: CustomerSource>(
    config: &ReconcileConfig,
    stripe: &S,
    repair: bool,
) -> anyhow::Result<Report> {
    let started = stripe::unix_now();
    let run_id = format!("reconcile_{started}_{:08x}", rand::random::<u32>());
    let sink = config.as_sink();
    let columns = Columns::from_config(&sink);

    let listed = stripe.customers().await.context("listing Stripe customers")?;
    let mut reads: Vec<StripeRead> = listed
        .iter()
        .map(|r| compare::read_customer(&r.value, r.read_at, &run_id))
        .collect();
    let stripe_customers = reads.len();
    tracing::info!(customers = stripe_customers, "Stripe customers listed");

    let lister = ContactLister::new(config, columns.clone())?;
    let contacts = lister.list().await?;

    let known: BTreeSet<String> = reads.iter().map(|r| r.customer_id.clone()).collect();
    let to_check: Vec<&str> = contacts
        .iter()
        .filter(|c| !c.tombstone && !known.contains(&c.customer_id))
        .map(|c| c.customer_id.as_str())
        .collect();
    if !to_check.is_empty() {
        tracing::info!(
            contacts = to_check.len(),
            "asking Stripe about contacts it did not list"
        );
    }
    for id in to_check {
        let answer = stripe
            .customer(id)
            .await
            .with_context(|| format!("retrieving Stripe customer {id}"))?;
        reads.push(match answer.value {
            // Created after the listing (or listed on a page that moved): compare it all the same.
            Lookup::Live(object) => compare::read_customer(&object, answer.read_at, &run_id),
            Lookup::Deleted => StripeRead {
                customer_id: id.to_string(),
                state: StripeState::Deleted,
                read_at: answer.read_at,
            },
            Lookup::Unknown => StripeRead {
                customer_id: id.to_string(),
                state: StripeState::Unknown,
                read_at: answer.read_at,
            },
        });
    }

    let plan = Plan {
        columns: &columns,
        fields: compare::field_names(&config.mapping),
        event_id: &run_id,
        livemode: config.livemode(),
        repair_unknown: config.repair_unknown,
    };
    let comparison = compare::compare(&plan, &reads, &contacts);
    let mut report = Report::new(run_id, started, stripe_customers, contacts.len(), &comparison);

    if repair {
        let records: Vec<schemas::Customer> = comparison
            .findings
            .iter()
            .filter_map(|f| f.correction.clone())
            .collect();
        let not_repaired = comparison
            .findings
            .iter()
            .filter(|f| f.correction.is_none())
            .map(|f| f.customer_id.clone())
            .collect();
        let written = if records.is_empty() {
            0
        } else {
            let repairer = repair::Repairer::connect(config).await?;
            repairer.write(&records).await?
        };
        report.repair = Some(report::Repair {
            topic: config.output_topic.clone(),
            records: written,
            not_repaired,
        });
    }
    Ok(report)
}
