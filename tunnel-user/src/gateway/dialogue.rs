//! What a login asks after the password is right, in the order of docs/login.md:
//!
//! ```text
//!   password right ─▶ [change password] ─▶ [token code] ─▶ [session choice] ─▶ [notice] ─▶ cookie
//!                      must_change or      realm's         user at the         realm's post-auth
//!                      expired             second factor   realm's limit       notice (accept)
//! ```
//!
//! Each step is planned from the realm's rules and the user's record when the password is
//! proven, and is taken only after the previous one was answered and checked. The session
//! choice is decided when it is reached, from the sessions the user has then. This module
//! decides the order and nothing else: no I/O, no clock; the runtime asks the client
//! (`tunnel_proto::Server::ask`) and checks the answers.

use std::collections::VecDeque;

/// What a realm asks of a login after the password (from `[realm.NAME]` in the config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RealmLogin {
    /// A TOTP code is asked after the password.
    pub totp: bool,
    /// At most this many sessions per user in the realm; 0 = no limit.
    pub max_sessions_per_user: u32,
    /// What a login at that limit does.
    pub session_limit: super::SessionLimit,
    /// Shown after the login, before the cookie: (text, the user must accept it).
    pub post_auth_notice: Option<(String, bool)>,
}

/// A step of the dialogue after the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The password must be changed.
    ChangePassword,
    /// The realm's second factor.
    TokenCode,
    /// The user may be at the realm's session limit: check then.
    SessionLimit(u32),
    /// The post-authentication notice, to accept.
    AcceptNotice(String),
}

/// The steps left of one login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialogue {
    steps: VecDeque<Step>,
    /// The post-authentication notice that needs no acceptance: shown with the cookie.
    shown_notice: Option<String>,
}

impl Dialogue {
    /// The plan once the password of a user is proven (or a certificate alone logged in).
    pub fn after_password(realm: &RealmLogin, must_change_password: bool) -> Dialogue {
        let mut steps = VecDeque::new();
        if must_change_password {
            steps.push_back(Step::ChangePassword);
        }
        if realm.totp {
            steps.push_back(Step::TokenCode);
        }
        if realm.max_sessions_per_user > 0 {
            steps.push_back(Step::SessionLimit(realm.max_sessions_per_user));
        }
        let mut shown_notice = None;
        match &realm.post_auth_notice {
            Some((text, true)) => steps.push_back(Step::AcceptNotice(text.clone())),
            Some((text, false)) => shown_notice = Some(text.clone()),
            None => {}
        }
        Dialogue {
            steps,
            shown_notice,
        }
    }

    /// The next step; None when the login is complete.
    pub fn next_step(&mut self) -> Option<Step> {
        self.steps.pop_front()
    }

    /// Puts `step` back in front: asked again next.
    pub fn again(&mut self, step: Step) {
        self.steps.push_front(step);
    }

    /// The notice to show with the cookie, taken once.
    pub fn take_shown_notice(&mut self) -> Option<String> {
        self.shown_notice.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(mut d: Dialogue) -> Vec<Step> {
        std::iter::from_fn(|| d.next_step()).collect()
    }

    #[test]
    fn a_plain_realm_asks_nothing_more() {
        let mut d = Dialogue::after_password(&RealmLogin::default(), false);
        assert_eq!(d.take_shown_notice(), None);
        assert_eq!(steps(d), []);
    }

    #[test]
    fn every_step_comes_in_the_documented_order() {
        let realm = RealmLogin {
            totp: true,
            max_sessions_per_user: 1,
            post_auth_notice: Some(("Maintenance on Sunday".into(), true)),
            ..RealmLogin::default()
        };
        assert_eq!(
            steps(Dialogue::after_password(&realm, true)),
            [
                Step::ChangePassword,
                Step::TokenCode,
                Step::SessionLimit(1),
                Step::AcceptNotice("Maintenance on Sunday".into()),
            ]
        );
        assert_eq!(
            steps(Dialogue::after_password(&realm, false))[0],
            Step::TokenCode
        );
    }

    #[test]
    fn a_notice_without_acceptance_is_shown_with_the_cookie() {
        let realm = RealmLogin {
            post_auth_notice: Some(("Hello".into(), false)),
            ..RealmLogin::default()
        };
        let mut d = Dialogue::after_password(&realm, false);
        assert_eq!(d.take_shown_notice().as_deref(), Some("Hello"));
        assert_eq!(d.take_shown_notice(), None);
        assert_eq!(steps(d), []);
    }
}
