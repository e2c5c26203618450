"""trakscope: which training examples made my image classifier do that?"""

__version__ = "0.1.0"
