//! Topic names and the dead-letter naming rule. Stages take topic names from configuration; these
//! are the documented defaults.

/// Every verified Stripe event, written by the gateway. The replay source.
pub const STRIPE_EVENTS: &str = "stripe.events";
/// One record per customer change, written by the enricher.
pub const CUSTOMERS_NORMALIZED: &str = "customers.normalized";

/// The dead-letter topic of an input topic: `<topic>.dlq`.
pub fn dlq_for(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// The Confluent `TopicNameStrategy` subject for a topic's values: `<topic>-value`.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        assert_eq!(dlq_for(STRIPE_EVENTS), "stripe.events.dlq");
        assert_eq!(value_subject(CUSTOMERS_NORMALIZED), "customers.normalized-value");
    }
}
