//! The tasks and difficulty levels the router reasons about (the product's
//! vocabulary: a request has a *task* and a *difficulty*).
//!
//! | task | what it covers |
//! |---|---|
//! | `code` | writing, fixing, explaining or testing code |
//! | `math` | arithmetic, algebra, word problems, calculus |
//! | `reasoning` | logic puzzles, multi-step deduction, argument validity |
//! | `knowledge_qa` | factual questions, exam-style multiple choice |
//! | `extraction` | pulling fields/entities out of given text |
//! | `classification` | labelling given text (sentiment, topic, intent, spam) |
//! | `summarization` | condensing given text |
//! | `creative_writing` | stories, poems, lyrics |
//! | `chat` | greetings and open conversation |
//! | `translation` | between natural languages |
//! | `tool_use` | requests that call functions/tools |
//! | `analysis` | comparisons, trade-offs, design decisions, risk assessment, critiques |
//!
//! Difficulty is the probability that a mid-size model (Mixtral-8x7B in the
//! RouteLLM data) gets the prompt wrong, bucketed into easy/medium/hard at
//! thresholds the classifier carries ([`crate::Classifier::difficulty_of`]).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Code,
    Math,
    Reasoning,
    KnowledgeQa,
    Extraction,
    Classification,
    Summarization,
    CreativeWriting,
    Chat,
    Translation,
    ToolUse,
    Analysis,
}

impl Task {
    pub const ALL: [Task; 12] = [
        Task::Code,
        Task::Math,
        Task::Reasoning,
        Task::KnowledgeQa,
        Task::Extraction,
        Task::Classification,
        Task::Summarization,
        Task::CreativeWriting,
        Task::Chat,
        Task::Translation,
        Task::ToolUse,
        Task::Analysis,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Task::Code => "code",
            Task::Math => "math",
            Task::Reasoning => "reasoning",
            Task::KnowledgeQa => "knowledge_qa",
            Task::Extraction => "extraction",
            Task::Classification => "classification",
            Task::Summarization => "summarization",
            Task::CreativeWriting => "creative_writing",
            Task::Chat => "chat",
            Task::Translation => "translation",
            Task::ToolUse => "tool_use",
            Task::Analysis => "analysis",
        }
    }

    pub fn parse(s: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Difficulty {
    Easy,
    Medium,
    Hard,
}

impl Difficulty {
    pub fn as_str(self) -> &'static str {
        match self {
            Difficulty::Easy => "easy",
            Difficulty::Medium => "medium",
            Difficulty::Hard => "hard",
        }
    }
}
