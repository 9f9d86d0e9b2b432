//! Assembly: ring-buffer records and kernel statistics made into episodes,
//! loop figures, thread roles and threadpool saturations, before symbolization.
pub mod episode;
pub mod loop_stats;
pub mod threadpool;
pub mod threads;
