//! The health state machine of one target, as lua-resty-healthcheck (and so APISIX) runs it.
//!
//! Four states: `healthy`, `mostly_healthy`, `mostly_unhealthy`, `unhealthy`; the first two are
//! usable. Four counters: successes, HTTP failures, TCP failures, timeouts.
//! - A success is ignored while healthy; otherwise it counts, clears every failure counter, and
//!   makes the target healthy once `successes` are reached (else an unhealthy target becomes
//!   mostly_unhealthy).
//! - A failure of some kind is ignored while unhealthy; otherwise it counts, clears the success
//!   counter, and makes the target unhealthy once that kind reaches its threshold (else a
//!   healthy target becomes mostly_healthy). Kinds count independently: 2 TCP failures and 1
//!   HTTP failure do not add up. A threshold of 0 disables that kind.

/// What a probe or a proxied request told us about a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Success,
    HttpFailure,
    TcpFailure,
    Timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Healthy,
    MostlyHealthy,
    MostlyUnhealthy,
    Unhealthy,
}

impl Status {
    pub fn usable(self) -> bool {
        matches!(self, Status::Healthy | Status::MostlyHealthy)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::MostlyHealthy => "mostly_healthy",
            Status::MostlyUnhealthy => "mostly_unhealthy",
            Status::Unhealthy => "unhealthy",
        }
    }
}

/// Thresholds for one kind of checking (active or passive); 0 disables a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Thresholds {
    pub successes: u8,
    pub http_failures: u8,
    pub tcp_failures: u8,
    pub timeouts: u8,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub success: u8,
    pub http_failure: u8,
    pub tcp_failure: u8,
    pub timeout_failure: u8,
}

#[derive(Debug, Clone)]
pub struct Machine {
    pub status: Status,
    pub counters: Counters,
}

impl Default for Machine {
    /// Targets start healthy.
    fn default() -> Self {
        Machine {
            status: Status::Healthy,
            counters: Counters::default(),
        }
    }
}

/// A usable/unusable flip and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub usable: bool,
    pub reason: String,
}

impl Machine {
    /// Applies a report; returns the transition when usability changed.
    pub fn report(&mut self, r: Report, t: &Thresholds) -> Option<Transition> {
        let was = self.status.usable();
        let c = &mut self.counters;
        let mut reason = String::new();
        match r {
            Report::Success => {
                if self.status == Status::Healthy || t.successes == 0 {
                    return None;
                }
                c.success = c.success.saturating_add(1);
                c.http_failure = 0;
                c.tcp_failure = 0;
                c.timeout_failure = 0;
                if c.success >= t.successes {
                    self.status = Status::Healthy;
                    reason = format!("{} successes", c.success);
                } else if self.status == Status::Unhealthy {
                    self.status = Status::MostlyUnhealthy;
                }
            }
            failure => {
                if self.status == Status::Unhealthy {
                    return None;
                }
                let (counter, threshold, what) = match failure {
                    Report::HttpFailure => (&mut c.http_failure, t.http_failures, "HTTP failures"),
                    Report::TcpFailure => (&mut c.tcp_failure, t.tcp_failures, "TCP failures"),
                    _ => (&mut c.timeout_failure, t.timeouts, "timeouts"),
                };
                if threshold == 0 {
                    return None;
                }
                *counter = counter.saturating_add(1);
                let count = *counter;
                c.success = 0;
                if count >= threshold {
                    self.status = Status::Unhealthy;
                    reason = format!("{count} {what}");
                } else if self.status == Status::Healthy {
                    self.status = Status::MostlyHealthy;
                }
            }
        }
        let now = self.status.usable();
        (now != was).then_some(Transition {
            usable: now,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        successes: 2,
        http_failures: 5,
        tcp_failures: 2,
        timeouts: 3,
    };

    #[test]
    fn failures_eject_and_successes_restore() {
        let mut m = Machine::default();
        assert_eq!(m.report(Report::TcpFailure, &T), None);
        assert_eq!(m.status, Status::MostlyHealthy);
        let t = m.report(Report::TcpFailure, &T).unwrap();
        assert!(!t.usable);
        assert_eq!(t.reason, "2 TCP failures");
        assert_eq!(
            m.report(Report::Timeout, &T),
            None,
            "ignored while unhealthy"
        );
        assert_eq!(m.report(Report::Success, &T), None);
        assert_eq!(m.status, Status::MostlyUnhealthy);
        let t = m.report(Report::Success, &T).unwrap();
        assert!(t.usable);
        assert_eq!(m.status, Status::Healthy);
        assert_eq!(m.counters.tcp_failure, 0);
    }

    #[test]
    fn kinds_count_independently_and_success_resets() {
        let mut m = Machine::default();
        m.report(Report::TcpFailure, &T);
        m.report(Report::HttpFailure, &T);
        assert_eq!(m.status, Status::MostlyHealthy);
        m.report(Report::Success, &T);
        assert_eq!(
            m.counters,
            Counters {
                success: 1,
                ..Default::default()
            }
        );
        for _ in 0..2 {
            m.report(Report::Timeout, &T);
        }
        assert!(m.status.usable());
        assert!(m.report(Report::Timeout, &T).is_some());
        let disabled = Thresholds {
            http_failures: 0,
            ..T
        };
        let mut m = Machine::default();
        for _ in 0..10 {
            assert_eq!(m.report(Report::HttpFailure, &disabled), None);
        }
        assert_eq!(m.status, Status::Healthy);
    }
}
