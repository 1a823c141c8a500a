//! End-to-end tests of onebyte (relay, workers, browser) land here with the relay issue.
