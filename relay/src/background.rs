//! Background tasks of `relay serve`: in-process projectors (embedded mode) and
//! periodic housekeeping. All run under the state's `TaskTracker` and stop on shutdown.

use crate::app::AppState;
use crate::config::OnOff;

/// Starts every background task for a serving process.
pub fn spawn(state: &AppState) {
    if state.config.projectors == OnOff::On {
        crate::cmd::project::spawn_projectors(state.db.clone(), state.log.clone(), &state.common, &state.tracker, state.shutdown.clone());
    }
}
