//! The task families and difficulty levels the router reasons about.
//!
//! | family | what it covers |
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
//!
//! Difficulty is the probability that a mid-size model (Mixtral-8x7B in the
//! RouteLLM data) gets the prompt wrong, bucketed into easy/medium/hard.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskFamily {
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
}

impl TaskFamily {
    pub const ALL: [TaskFamily; 11] = [
        TaskFamily::Code,
        TaskFamily::Math,
        TaskFamily::Reasoning,
        TaskFamily::KnowledgeQa,
        TaskFamily::Extraction,
        TaskFamily::Classification,
        TaskFamily::Summarization,
        TaskFamily::CreativeWriting,
        TaskFamily::Chat,
        TaskFamily::Translation,
        TaskFamily::ToolUse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskFamily::Code => "code",
            TaskFamily::Math => "math",
            TaskFamily::Reasoning => "reasoning",
            TaskFamily::KnowledgeQa => "knowledge_qa",
            TaskFamily::Extraction => "extraction",
            TaskFamily::Classification => "classification",
            TaskFamily::Summarization => "summarization",
            TaskFamily::CreativeWriting => "creative_writing",
            TaskFamily::Chat => "chat",
            TaskFamily::Translation => "translation",
            TaskFamily::ToolUse => "tool_use",
        }
    }

    pub fn parse(s: &str) -> Option<TaskFamily> {
        TaskFamily::ALL.into_iter().find(|f| f.as_str() == s)
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
    pub const EASY_BELOW: f32 = 0.3;
    pub const HARD_ABOVE: f32 = 0.6;

    pub fn from_p_hard(p: f32) -> Difficulty {
        if p < Self::EASY_BELOW {
            Difficulty::Easy
        } else if p > Self::HARD_ABOVE {
            Difficulty::Hard
        } else {
            Difficulty::Medium
        }
    }
}
