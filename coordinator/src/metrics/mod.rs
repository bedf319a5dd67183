//! Step 1 text metrics, bit-compatible with jieba 0.42.1 + rouge-chinese 1.0.3 + nltk 3.8.1.
